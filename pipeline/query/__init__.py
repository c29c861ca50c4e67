"""The kaudit query language (compatible with the seed product's queries) compiled to parameterized SQL.

    from pipeline.query import compile_query
    q = compile_query('verb="delete" groupby objectref_resource,username', since="1h")
    client.query(q.sql, parameters=q.params)  # or run_compiled(fn, q): listings search the newest events first
"""

from pipeline.query.compiler import CompiledQuery, compile_query
from pipeline.query.errors import QueryError
from pipeline.query.listing import run_compiled

__all__ = ["CompiledQuery", "QueryError", "compile_query", "run_compiled"]
