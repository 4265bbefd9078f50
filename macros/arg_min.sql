{% macro arg_min(value, ordered_by) %}
    {{- return(adapter.dispatch('arg_min')(value, ordered_by)) -}}
{% endmacro %}

{% macro default__arg_min(value, ordered_by) %}
    arg_min({{ value }}, {{ ordered_by }})
{%- endmacro %}

{% macro postgres__arg_min(value, ordered_by) %}
    (array_agg({{ value }} order by {{ ordered_by }}) filter (
        where {{ value }} is not null and {{ ordered_by }} is not null
    ))[1]
{%- endmacro %}

{% macro spark__arg_min(value, ordered_by) %}
    {#- min_by skips a null ordering, not a null value: a null value's row is
        given no ordering -#}
    min_by({{ value }}, case when {{ value }} is not null then {{ ordered_by }} end)
{%- endmacro %}
