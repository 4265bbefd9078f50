{% macro last_built_load_id(built_column='last_load_id') %}
    {#- The newest dlt load id already built into this incremental model ('' when none
        is): rows whose `load_id` is at or after it were (re)written since and are built
        again. Load ids are epoch seconds as text, so they sort as text; `>=` takes the
        last load again, which is what makes a build that ran while a load was half
        done whole. -#}
    (
        select coalesce(max(built.{{ built_column }}), '')
        from {{ this }} as built
    )
{%- endmacro %}
