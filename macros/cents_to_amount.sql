{% macro cents_to_amount(column_name, scale=2) %}
    {#- 100.0, not 100: Postgres divides two integers to an integer -#}
    cast(({{ column_name }}) / 100.0 as decimal(18, {{ scale }}))
{%- endmacro %}
