{% macro minutes_between(start, finish) %}
    {#- Minutes from start to finish, as a double; portable (DuckDB, Postgres). -#}
    (extract(epoch from ({{ finish }} - {{ start }})) / 60.0)
{% endmacro %}
