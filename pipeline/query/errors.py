"""Query errors carry the 1-based column where the problem is, so the CLI and API can point at it."""

from __future__ import annotations


class QueryError(ValueError):
    def __init__(self, message: str, column: int | None = None) -> None:
        self.message = message
        self.column = column
        super().__init__(f"{message} at column {column}" if column else message)

    def __str__(self) -> str:  # `unknown field "usrname" at column 31; did you mean "username"?`
        return self.args[0]


def error_at(message: str, column: int, hint: str = "") -> QueryError:
    text = f"{message} at column {column}" + (f"; {hint}" if hint else "")
    err = QueryError(message, column)
    err.args = (text,)
    return err
