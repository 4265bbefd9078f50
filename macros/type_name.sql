{% macro type_name(data_type) %}
    {{- return(adapter.dispatch('type_name')(data_type)) -}}
{% endmacro %}

{% macro default__type_name(data_type) %}
    {#- The type as written in this project (DuckDB and Postgres both know it). -#}
    {{- return(data_type) -}}
{% endmacro %}

{% macro spark__type_name(data_type) %}
    {#- Spark's name: no length-less varchar, no `double precision`, one timestamp
        (an instant, shown in the session's time zone, UTC); the API's `integer` ids
        land as 64-bit in parquet. Anything else (bigint, boolean, date,
        decimal(p, s), timestamp, string) is the same name. -#}
    {%- set names = {
        'varchar': 'string',
        'text': 'string',
        'integer': 'bigint',
        'int': 'bigint',
        'double precision': 'double',
        'timestamp with time zone': 'timestamp',
        'timestamptz': 'timestamp',
    } -%}
    {%- set key = data_type | trim | lower -%}
    {{- return(names.get(key, key)) -}}
{% endmacro %}
