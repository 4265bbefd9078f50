{% macro create_lake_sources() %}
    {#- Run at the start of every dbt invocation (on-run-start); nothing but on Spark.
        There raw is the lake the loader writes with dlt's filesystem destination:
        parquet files, one folder per table, `<bucket_url>/raw/<table>/`, where
        `<bucket_url>` is dlt's DESTINATION__FILESYSTEM__BUCKET_URL (default
        data/lake, relative to the project). Every table the sources `replica` and
        `salesflow` declare is made again, dropped and created as an external parquet
        table over its folder, its schema inferred from all its files (merged: a
        newer load may add columns), so what loaded since the last run shows. A table
        whose folder holds no parquet yet is made empty with the columns and types its
        sources yml declares (`lake_column_types`), so a first build works. The removed
        logs (source `removed`) are not on the lake: the marts' post-hooks make them. -#}
    {%- if not execute or target.type != 'spark' -%}
        {{- return('') -}}
    {%- endif -%}
    {%- set raw = lake_url() ~ '/raw' -%}
    {%- do adapter.create_schema(api.Relation.create(schema='raw')) -%}
    {#- the folders holding parquet, as the filesystem names them (absolute), listed
        through a table over raw's folder (a table, not a view: one reads as empty
        while the loader has written nothing, where a view fails) -#}
    {%- set listing = 'raw.lake_files' -%}
    {%- do run_query('drop table if exists ' ~ listing) -%}
    {%- do run_query(
        'create table ' ~ listing ~ " using binaryFile options (recursiveFileLookup"
        ~ " 'true', pathGlobFilter '*.parquet') location '" ~ raw ~ "'"
    ) -%}
    {%- set folders = {} -%}
    {%- for row in run_query(
        "select distinct regexp_extract(path, '^(.*)/([^/]+)/[^/]+$', 2) as name,"
        ~ " regexp_extract(path, '^(.*)/[^/]+$', 1) as folder"
        ~ " from " ~ listing
    ) -%}
        {%- do folders.update({row[0]: row[1]}) -%}
    {%- endfor -%}
    {%- do run_query('drop table ' ~ listing) -%}
    {%- for src in graph.sources.values()
        if src.source_name in ['replica', 'salesflow'] -%}
        {%- set table = src.schema ~ '.' ~ src.identifier -%}
        {%- do run_query('drop table if exists ' ~ table) -%}
        {%- if src.identifier in folders -%}
            {%- do run_query(
                'create table ' ~ table ~ " using parquet options (mergeSchema 'true')"
                ~ " location '" ~ folders[src.identifier] ~ "'"
            ) -%}
        {%- else -%}
            {%- do run_query(
                'create table ' ~ table ~ ' (' ~ lake_column_types(src) | join(', ')
                ~ ') using parquet'
            ) -%}
        {%- endif -%}
    {%- endfor -%}
{%- endmacro %}
