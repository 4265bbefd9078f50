"""The runners: what ``salesflow`` commands start, built from the services below them.

* ``pipeline`` — one load as a cycle under the run lock (extract, normalize, load, the
  first-load repair, schema tracking, health), optionally followed by ``dbt build``;
* ``first_loads`` — the repair that makes an appended first load what a merge leaves;
* ``late_rows`` — rows committed later than the lookback on listings read by time: the
  wide re-reads now and then, and the count reconciliation that finds and repairs a gap;
* ``quarantine`` — what each cycle newly held in ``raw.quarantine`` per entity, and the
  alarm when an entity's records mostly go there;
* ``endpoints`` — the alarm when one entity's endpoint fails while the others load;
* ``dead_letters`` — ``salesflow quarantine``: what the quarantine holds and why, and the
  replay that loads held records again through the current configuration;
* ``check_api`` — ``salesflow check-api``: before a first load, each check of the
  configured API (reach, auth, pages, fields, paging, since, deletions, counts, schema)
  with the setting to change when it fails; writes nothing;
* ``watch`` — cycles back to back: load, build what changed, publish;
* ``slices`` — watch's periodic data tests, one slice of about a second per cycle;
* ``publish`` — the analysts' read-only copy of the DuckDB marts;
* ``demo`` — the simulator, a backfill, an incremental load, dbt and the docs site.

May import: every service (the replica source, schema changes, the contract,
monitoring), the foundations and, for the demo, the simulator; only the CLI imports
the runners.
"""
