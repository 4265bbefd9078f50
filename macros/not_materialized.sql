{% macro not_materialized() %}
    {{- return(adapter.dispatch('not_materialized')()) -}}
{% endmacro %}

{% macro default__not_materialized() %}
    {#- The hint written between a CTE's `as` and its body: DuckDB and Postgres inline
        the CTE, so a filter on it reaches the input's scan. -#}
    {{- return('not materialized ') -}}
{% endmacro %}

{% macro spark__not_materialized() %}
    {#- Spark has no such hint, and always inlines a CTE read once. -#}
    {{- return('') -}}
{% endmacro %}
