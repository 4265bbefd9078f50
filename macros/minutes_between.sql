{% macro minutes_between(start, finish) %}
    {{- return(adapter.dispatch('minutes_between')(start, finish)) -}}
{% endmacro %}

{% macro default__minutes_between(start, finish) %}
    {#- Minutes from start to finish, as a double; portable (DuckDB, Postgres: there
        extract gives a numeric, hence the cast). -#}
    (cast(extract(epoch from ({{ finish }} - {{ start }})) as double precision) / 60.0)
{% endmacro %}

{% macro spark__minutes_between(start, finish) %}
    {#- Spark extracts no epoch: microseconds since the epoch, subtracted -#}
    (cast(unix_micros({{ finish }}) - unix_micros({{ start }}) as double) / 60000000.0)
{% endmacro %}
