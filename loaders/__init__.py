"""salesflow's loaders: the replica API into the warehouse, and everything around it.

Imports flow one way, from the entry points down to the foundations:

* entry points — ``cli`` (thin: parse, call, print) over the ``runners`` (pipeline,
  watch, publish, demo);
* services — ``schema_changes`` (detect, log, impact, announcements), ``contract``
  (lineage, reach, build, verify, assessment of announcements), ``monitoring`` (health,
  incidents, notifications, status) and the dlt source ``replica`` (client, pages and
  quarantine, lookback). ``schema_changes`` may use ``contract`` and ``monitoring``;
  ``contract`` and ``monitoring`` use neither of the others;
* foundations — ``config`` (every setting, resolved once: paths, the API's URL and
  token, endpoints, contracts, declared announcements, channels), ``warehouse`` (the
  target, the dlt pipeline on it, what raw holds), ``dbt_project`` (the one way dbt is
  run, and its manifest), ``roles`` (PostgreSQL grants). ``replica.settings`` and
  ``replica.errors`` are declarations every layer may read.

Each package's docstring says what it is for and what it may import.
"""
