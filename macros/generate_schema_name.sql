{% macro generate_schema_name(custom_schema_name, node) %}
    {#- The folder's schema as named (staging, marts, ...), the target's otherwise. -#}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{% endmacro %}
