{% macro cents_to_amount(column_name, scale=2) %}
    cast(({{ column_name }}) / 100 as decimal(18, {{ scale }}))
{%- endmacro %}
