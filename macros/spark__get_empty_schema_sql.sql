{% macro spark__get_empty_schema_sql(columns) %}
    {#- dbt's check of an enforced contract on Spark (dbt's own dispatch, overridden
        here): the yml's data types are DuckDB's and Postgres' names (varchar,
        double precision, timestamp with time zone), compared in Spark's
        (`type_name`); the contract itself stays one list for every warehouse. -#}
    {%- set translated = {} -%}
    {%- for name, column in columns.items() -%}
        {%- set copy = dict(column) -%}
        {%- if copy.get('data_type') -%}
            {%- do copy.update({'data_type': type_name(copy['data_type'])}) -%}
        {%- endif -%}
        {%- do translated.update({name: copy}) -%}
    {%- endfor -%}
    {{ return(dbt.default__get_empty_schema_sql(translated)) }}
{%- endmacro %}
