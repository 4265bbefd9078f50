{% macro removed_log() %}
    {#- Where this incremental mart records the rows it
        removes: `<mart>__removed` in schema `removed` (source `removed`), one row
        per row removed, with the mart's unique key, the columns the marts built from it
        group by, and `removed_load_id` (the dlt load behind the removal). Marts built
        from it read it to find what a removal took from their totals, and analysts' copy
        to delete those keys, each from the rows at or after its own newest load id:
        never a comparison of whole tables. -#}
    {{- return(api.Relation.create(
        database=this.database, schema=removed_schema(),
        identifier=this.identifier ~ '__removed'
    )) -}}
{%- endmacro %}


{% macro removed_schema() %}
    {#- The schema of the removed logs (source `removed`; the publisher's
        REMOVED_SCHEMA). -#}
    {{- return('removed') -}}
{%- endmacro %}


{% macro create_removed_schema() %}
    {#- Run at the start of every dbt invocation (on-run-start): the schema of the
        removed logs, made once, before marts building side by side would race to make
        it. -#}
    {%- if execute -%}
        {%- do adapter.create_schema(
            api.Relation.create(database=target.get('database'), schema=removed_schema())
        ) -%}
    {%- endif -%}
{%- endmacro %}


{% macro removed_log_table() %}
    {#- The statement making this model's removed log (`removed_log()`) if it does not
        exist yet: its unique key, the columns its config names under
        `meta.removed_columns`, `removed_load_id`. The post-hook of every mart that
        removes rows, so the log is there, empty, from the mart's first build on. -#}
    {%- set log = removed_log() -%}
    create table if not exists {{ log }} as
    select
        {% for c in removed_columns() %}built.{{ c }}, {% endfor -%}
        cast(null as {{ dbt.type_string() }}) as removed_load_id
    from {{ this }} as built
    where false
{%- endmacro %}


{% macro removed_columns() %}
    {#- The columns of this model's removed log besides the load id: its unique key and
        those named in its config (`meta.removed_columns`). -#}
    {%- set unique_key = config.get('unique_key') -%}
    {%- set named = (config.get('meta') or {}).get('removed_columns', []) -%}
    {{- return([unique_key] + (named | reject('equalto', unique_key) | list)) -}}
{%- endmacro %}


{% macro remove_rows(column, named) %}
    {#- Statements for a pre-hook: delete this model's rows whose `column` is a `key`
        of the select `named` (columns `key`, `removed_load_id`), after recording them in
        the model's removed log (`removed_log_table()`). Rows logged more than a week of
        loads before the model's newest load are dropped from the log: a mart built from
        this one and not rebuilt for that long needs a full refresh (analysts' copy,
        should a version lag that far, finds the keys by comparing row counts). -#}
    {%- set log = removed_log() -%}
    {%- set columns = removed_columns() -%}
    {{ removed_log_table() }};
    {%- set newest = last_built_load_id() | replace("'", "") | trim if execute else '' %}
    {%- if newest %}

    -- load ids are epoch seconds as text: the horizon compares as text, block by block
    delete from {{ log }}
    where removed_load_id < '{{ "%.6f" | format(newest | float - 7 * 86400) }}';
    {%- endif %}

    {#- the keys read once, written in as constants where they can be (keys_to_build) #}
    {%- set removed = keys_to_build(column, 'select named.key from (' ~ named ~ ') as named') %}
    {%- if removed | trim != 'false' %}

    insert into {{ log }} ({{ columns | join(', ') }}, removed_load_id)
    select distinct
        {% for c in columns %}built.{{ c }}, {% endfor -%}
        named.removed_load_id
    from (select * from {{ this }} where {{ removed }}) as built
    inner join ({{ named }}) as named
        on built.{{ column }} = named.key;

    delete from {{ this }}
    where {{ removed }}
    {%- endif -%}
{%- endmacro %}


{% macro removed_since(model_name, since) %}
    {#- The rows of `model_name`'s removed log (`removed_log`) a load at or after `since`
        removed, as a select; no row when that mart never removed any. In unit tests the
        source `removed` is a fixture like any input. -#}
    {%- set log = source('removed', model_name ~ '__removed') -%}
    {%- if execute and this is not string
        and adapter.get_relation(
            database=log.database, schema=log.schema, identifier=log.identifier
        ) is none -%}
    select
        *,
        cast(null as {{ dbt.type_string() }}) as removed_load_id
    from {{ ref(model_name) }}
    where false
    {%- else -%}
    select * from {{ log }} as removed
    where removed.removed_load_id >= {{ since }}
    {%- endif -%}
{%- endmacro %}


{% macro changed_periods(period, input, period_of) %}
    {#- One select: the `period`s (`period_of`, an expression on columns that `input`
        and its removed log share) that a sales aggregate rebuilds, each with
        `newest_load_id`, the newest load behind the change: those with a row of `input`
        written by a load this build takes (`build_from_load_id`), and those a row was removed
        from since (a deletion upstream leaves no newer row behind). -#}
    {%- set since = build_from_load_id() -%}
    select
        {{ period }},
        max(newest_load_id) as newest_load_id
    from (
        select
            {{ period_of }} as {{ period }},
            last_load_id as newest_load_id
        from {{ ref(input) }}
        where last_load_id >= {{ since }}
        union all
        select
            {{ period_of }} as {{ period }},
            removed.removed_load_id as newest_load_id
        from ({{ removed_since(input, since) }}) as removed
    ) as changed
    group by {{ period }}
{%- endmacro %}


{% macro rebuild_periods(period, input, period_of) %}
    {#- The pre-hook of a sales aggregate: removes the periods the build is about to
        rebuild (`changed_periods`), so that a period left with no row (every line
        cancelled or deleted) is gone rather than kept as last built, and logs them for
        the marts and the copy built from this one. Nothing on a first or full build. -#}
    {%- if not is_incremental() -%}
        {{- return('') -}}
    {%- endif -%}
    {{ remove_rows(
        period,
        "select periods." ~ period ~ " as key, periods.newest_load_id as removed_load_id"
        ~ " from (" ~ changed_periods(period, input, period_of) ~ ") as periods"
    ) }}
{%- endmacro %}
