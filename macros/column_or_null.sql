{% macro column_or_null(relation, column_name, data_type) %}
    {#- The column cast to data_type if the relation has it, else a typed null. -#}
    {%- set found = false -%}
    {%- if execute -%}
        {%- set names = adapter.get_columns_in_relation(relation)
            | map(attribute='name') | map('lower') | list -%}
        {%- set found = column_name | lower in names -%}
    {%- endif -%}
    {%- if found -%}
        cast({{ adapter.quote(column_name) }} as {{ type_name(data_type) }})
    {%- else -%}
        cast(null as {{ type_name(data_type) }})
    {%- endif -%}
{% endmacro %}
