"""The stream worker: raw audit records -> parsed, deduplicated, windowed and flagged outputs.

Modules: ``conditions`` (field conditions shared by rules and filters), ``rules/`` (alert rules and the
default set), ``filters`` (noise filter), ``state`` (per-partition dedup state), ``windows`` (per-record
window contributions), ``processor`` (one raw record -> all outputs, a pure function of the record and the
state), ``app`` (the faust app that drives it).
"""
