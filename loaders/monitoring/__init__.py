"""Monitoring: is the pipeline healthy, and who has been told what.

* ``notify`` — one notifier, its channels (log, Slack, webhook, email) and the ledger
  that makes each notice reach each channel once;
* ``health`` — every cycle classified and kept; failed cycles in a row are one incident,
  notified when it opens and when it closes;
* ``alarms`` — conditions of the data found while cycles succeed, each one incident:
  one notice when found, one when a later check no longer finds it;
* ``rhythm`` — the data's rhythm (pure): an entity, or the whole platform, whose new
  rows stopped while the API still answers, and the replication lag the API reports;
* ``redact`` — every configured secret masked where text leaves the process: log
  records, the ledger, incidents, status and the command line's errors;
* ``status`` — ``salesflow status``: freshness and last new data, the open incident and
  alarms, announcements and the last notices, from the state files and the warehouse.

May import: the foundations (:mod:`loaders.config`, :mod:`loaders.warehouse`,
:mod:`loaders.dbt_project`) and the replica source's settings and errors.
"""
