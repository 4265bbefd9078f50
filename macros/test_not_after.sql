{% test not_after(model, column_name, later_column) %}
    select
        {{ column_name }},
        {{ later_column }}
    from {{ model }}
    where {{ column_name }} > {{ later_column }}
{% endtest %}
