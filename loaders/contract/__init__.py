"""The data contract with the platform team: the replica API fields salesflow depends on.

Derived from the dbt project itself and committed under ``contracts/`` (JSON Schema and
YAML) with a page for the docs site; a test fails when the committed files are stale
against the models. The modules, in the order they build on each other:

* ``lineage`` — column lineage of one compiled model (sqlglot);
* ``compile`` — the project compiled against a scratch warehouse, kept while unchanged;
* ``reach`` — what a source field reaches (models, mart columns or rows, exposures,
  owners, tests): the one answer the contract, impact reports and notices all use;
* ``build`` — the contract document; ``render`` — its files; ``export`` — build,
  compare and write them; ``document`` — where they are and how they are read;
* ``assess`` — an announced change checked against the contract;
* ``verify`` — a running API checked against the contract.

May import: :mod:`loaders.config`, :mod:`loaders.warehouse`, :mod:`loaders.dbt_project`
and the replica source; nothing that runs the pipeline or notifies.
"""
