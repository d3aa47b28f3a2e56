"""Batch scoring: a file of (query, item) pairs in, Parquet scores out, on the server's engines.

Not every score is wanted within 500 ms: the nightly candidates of every member, a backfill
after a model change, a new student's offline evaluation on a month of logs. Through the HTTP
server that spends the machine on HTTP and JSON; with a separate script the scores can differ
from what the server answers. Here the server's own pieces do the work: the engine (torch or
vLLM, chosen and configured by the same settings), the checkpoint's task and template, its
score calibrator and the same length limits.

- ``source``: reads a data-folder split or a JSONL / Parquet file in the data contract's shape
  (label optional) as a stream, grouped by query (consecutive rows of one ``query_id``: the
  query is computed once), and picks a shard's queries.
- ``scoring``: the engine, the limits, the calibrator: a group in, scores (or a per-row error)
  out.
- ``parts``: the output folder: numbered Parquet part files and a manifest, written
  atomically, so a killed run resumes where it stopped and ends with the same output; and the
  check that the shards of a run cover every input pair exactly once.
"""
