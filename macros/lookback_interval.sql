{% macro lookback_interval() %}
    {#- How far before the last build's high-water mark incremental marts re-read:
        var `lookback_hours` (default 3), e.g. --vars '{lookback_hours: 24}'.
        An interval times an integer: the same on DuckDB and Postgres. -#}
    (interval '1 hour' * cast({{ var('lookback_hours', 3) }} as bigint))
{%- endmacro %}

{% macro since_last_build(built_column) %}
    {#- The high-water mark of `built_column` in this incremental model less the lookback:
        rows changed at or after it are read again by the next build. -#}
    (
        select max(built.{{ built_column }}) - {{ lookback_interval() }}
        from {{ this }} as built
    )
{%- endmacro %}
