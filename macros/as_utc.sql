{% macro as_utc(expression) %}
    {{- return(adapter.dispatch('as_utc')(expression)) -}}
{% endmacro %}

{% macro default__as_utc(expression) %}
    {#- A timestamp with time zone as the UTC wall clock (a timestamp without one). -#}
    {{- expression }} at time zone 'utc'
{%- endmacro %}

{% macro spark__as_utc(expression) %}
    {#- Spark's timestamp is an instant shown in the session's time zone, UTC
        (profiles.yml): already what the other warehouses convert to. -#}
    {{- expression -}}
{%- endmacro %}
