"""Monitoring: is the pipeline healthy, and who has been told what.

* ``notify`` — one notifier, its channels (log, Slack, webhook, email) and the ledger
  that makes each notice reach each channel once;
* ``health`` — every cycle classified and kept; failed cycles in a row are one incident,
  notified when it opens and when it closes;
* ``status`` — ``salesflow status``: freshness, the open incident, announcements and the
  last notices, from the state files and the warehouse.

May import: the foundations (:mod:`loaders.config`, :mod:`loaders.warehouse`,
:mod:`loaders.dbt_project`) and the replica source's settings and errors.
"""
