{% macro lookback_interval() %}
    {#- How far before the last build's high-water mark incremental marts re-read:
        var `lookback_hours` (default 3), e.g. --vars '{lookback_hours: 24}'. -#}
    to_hours(cast({{ var('lookback_hours', 3) }} as bigint))
{%- endmacro %}
