{% macro drop_emptied_days(input, unique_key, day_column, day_of, load_column='load_id') %}
    {#- The pre-hook of a mart partitioned by day on Spark: drops the partitions of the
        days the build rewrites (`days_to_rebuild`) that `input` has no row in any
        more (every order of the day deleted or moved away): an overwrite writes the
        partitions it has rows for and leaves the others as they were. Dropped before
        the build, as they would be after it: a build that fails next leaves the
        model as the last one did, less those rows only, and tries the same days
        again. Nothing on a first or full build, nor on other warehouses. -#}
    {%- if not execute or target.type != 'spark' or not is_incremental() -%}
        {{- return('') -}}
    {%- endif -%}
    {%- set days = days_to_rebuild(input, unique_key, day_column, day_of, load_column) -%}
    {%- set emptied = run_query(
        "select distinct cast(d.key as string) from (" ~ days ~ ") as d"
        ~ " left anti join (select distinct " ~ day_of ~ " as key from " ~ input
        ~ ") as kept on d.key = kept.key where d.key is not null"
    ).columns[0].values() | sort -%}
    {%- if emptied | length == 0 -%}
        {{- return('') -}}
    {%- endif -%}
    alter table {{ this }} drop if exists
    {%- for day in emptied %}
        partition ({{ day_column }} = date'{{ day }}'){{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro %}
