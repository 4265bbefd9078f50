{% macro surrogate_key(columns) %}
    {#- md5 of the columns joined with '|', nulls as a marker, for grain keys. -#}
    md5(concat_ws(
        '|'
        {%- for column in columns %},
        coalesce(cast({{ column }} as {{ type_name('varchar') }}), '_null_')
        {%- endfor %}
    ))
{%- endmacro %}
