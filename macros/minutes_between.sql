{% macro minutes_between(start, finish) %}
    {#- Minutes from start to finish, as a double; portable (DuckDB, Postgres: there
        extract gives a numeric, hence the cast). -#}
    (cast(extract(epoch from ({{ finish }} - {{ start }})) as double precision) / 60.0)
{% endmacro %}
