{% macro delete_tombstoned(column, entity, source_key=none) %}
    {#- The pre-hook of an incremental mart whose rows go with a replica record: deletes
        this model's rows whose `column` holds the key (`source_key`, default `column`)
        of an `entity` record deleted since the last build, and records them in the
        model's removed log (`remove_rows`). A merge removes a deleted record's row from
        raw, so the rows to delete are read from the entity's deletion log
        (`deletion_log`), those a load at or after `build_from_load_id()` wrote: its
        newest blocks, not a comparison of whole tables. A pre-hook, so the load ids the
        build is about to add do not hide an earlier deletion; renders to nothing on a
        first or full build, or while nothing was ever deleted. -#}
    {%- if not is_incremental() -%}
        {{- return('') -}}
    {%- endif -%}
    {%- set log = deletion_log(entity) -%}
    {%- if log is none -%}
        {{- return('') -}}
    {%- endif -%}
    {%- set key = 'deleted.' ~ (source_key or column) -%}
    {{ remove_rows(
        column,
        "select " ~ key ~ " as key, max(deleted._dlt_load_id) as removed_load_id"
        ~ " from " ~ log ~ " as deleted"
        ~ " where deleted._dlt_load_id >= " ~ build_from_load_id()
        ~ " group by " ~ key,
    ) }}
{%- endmacro %}


{% macro deletion_log(entity) %}
    {#- The deletion log of the replica source `entity` (a row per record a load
        deleted: key, cursor, dlt load id; written by the loader beside the raw table,
        `<entity>__deleted`), as a relation; none until a load has deleted something. -#}
    {%- for src in graph.sources.values()
        if src.source_name == 'replica' and src.name == entity -%}
        {{- return(adapter.get_relation(
            database=src.database, schema=src.schema,
            identifier=src.identifier ~ '__deleted'
        )) -}}
    {%- endfor -%}
    {{- exceptions.raise_compiler_error("no replica source named " ~ entity) -}}
{%- endmacro %}
