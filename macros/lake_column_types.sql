{% macro lake_column_types(source_node) %}
    {#- Column definitions (`name type`) of a source table not on the lake yet, from
        its sources yml: the declared data_type in Spark's name (a column without one
        is a string), and the dlt load id every replica table carries. -#}
    {%- set columns = [] -%}
    {%- for column in source_node.columns.values() -%}
        {%- do columns.append(column.name ~ ' '
            ~ type_name(column.data_type or 'varchar')) -%}
    {%- endfor -%}
    {%- if source_node.source_name == 'replica' -%}
        {%- do columns.append('_dlt_load_id string') -%}
    {%- endif -%}
    {{- return(columns) -}}
{%- endmacro %}
