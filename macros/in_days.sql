{% macro in_days(day_of, days) %}
    {#- A condition keeping the rows whose day (`day_of`) is one of `days` (a select of
        one date column, `key`). In a run the days are read when the model is compiled
        and written in as constants: the insert that overwrites the model's partitions
        may not read the model itself, which `days` does. A unit test (`this` a
        fixture in the query) keeps the subquery. -#}
    {%- if not (execute and this is not string) -%}
        {{- return(day_of ~ ' in (select d.key from (' ~ days ~ ') as d)') -}}
    {%- endif -%}
    {%- set found = run_query(
        "select distinct cast(d.key as string) from (" ~ days ~ ") as d"
        ~ " where d.key is not null"
    ).columns[0].values() | sort -%}
    {%- if found | length == 0 -%}
        {{- return('false') -}}
    {%- endif -%}
    {%- set listed = [] -%}
    {%- for day in found -%}
        {%- do listed.append("date'" ~ day ~ "'") -%}
    {%- endfor -%}
    {{- return(day_of ~ ' in (' ~ listed | join(', ') ~ ')') -}}
{%- endmacro %}
