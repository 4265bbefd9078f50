{% macro safe_divide(numerator, denominator) %}
    {#- numerator / denominator as a double, null when the denominator is 0: a true
        division on every adapter (Postgres divides two integers to an integer). -#}
    (
        cast({{ numerator }} as {{ type_name('double precision') }})
        / nullif({{ denominator }}, 0)
    )
{%- endmacro %}
