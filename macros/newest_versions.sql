{% macro newest_versions(relation, primary_key, cursor='updated_at', deleted_marker=none) %}
    {{- return(adapter.dispatch('newest_versions')(
        relation, primary_key, cursor, deleted_marker
    )) -}}
{% endmacro %}

{% macro default__newest_versions(relation, primary_key, cursor, deleted_marker) %}
    {#- dlt merges raw on DuckDB and Postgres: one row per key, deleted records
        removed. Raw is read as it is. -#}
    select * from {{ relation }}
{%- endmacro %}

{% macro spark__newest_versions(relation, primary_key, cursor, deleted_marker) %}
    {#- The lake is append-only (every version of a record, a deletion as a version
        whose `deleted_marker` is set): the newest version of each key, by cursor,
        then load, a deletion first on a tie; none for a key whose newest version is
        a deletion. The columns are raw's, the marker added (null) while no file
        carries it (a column dlt never saw a value in is not written). -#}
    {%- set names = [] -%}
    {%- if execute -%}
        {%- set names = adapter.get_columns_in_relation(relation)
            | map(attribute='name') | map('lower') | list -%}
    {%- endif -%}
    {%- set has_marker = deleted_marker is not none and deleted_marker | lower in names -%}
    select
        latest.version.*
        {%- if deleted_marker is not none and not has_marker %},
        cast(null as timestamp) as {{ deleted_marker }}
        {%- endif %}
    from (
        select
            max_by(
                struct(versions.*),
                struct(
                    versions.{{ cursor }},
                    versions._dlt_load_id,
                    {{ 'versions.' ~ deleted_marker ~ ' is not null'
                        if has_marker else 'false' }}
                )
            ) as version
        from {{ relation }} as versions
        group by versions.{{ primary_key }}
    ) as latest
    {%- if has_marker %}
    where latest.version.{{ deleted_marker }} is null
    {%- endif %}
{%- endmacro %}
