{% macro keys_to_build(column, keys, bounds=none, limit=2000) %}
    {#- A condition keeping the rows an incremental build reads: those whose `column`
        is one of the keys `keys` selects (a select of one column named `key`).

        On DuckDB, in a run (not a unit test, whose inputs are fixtures in the query),
        the keys are read when the model is compiled and written into its SQL as a
        constant list: DuckDB pushes a constant filter into the scan, through the
        staging views (a customer's hashes are computed for the customers built, not
        for every one) and skipping the blocks whose min/max miss every key, where a
        subquery is joined only after every row was read and computed. `bounds`, a
        pair (`base_column`, `width`): `column` is computed from `base_column`
        (a period of a time), and the rows read are bounded to the keys' span on it,
        which the scan can skip by as well. The list is made by the warehouse and read
        as one row. Past `limit` keys (a large change: the scan reads most blocks
        anyway, and a long list costs more to parse than it saves), on other
        warehouses and in unit tests, the subquery. -#}
    {%- set subquery = column ~ ' in (select k.key from (' ~ keys ~ ') as k)' -%}
    {%- if not (execute and this is not string and target.type == 'duckdb') -%}
        {{- return(subquery) -}}
    {%- endif -%}
    {%- set found = run_query(
        "select count(*), min(typeof(key)), cast(min(key) as varchar),"
        ~ " cast(max(key) as varchar), string_agg('cast(''' || replace(cast(key as varchar),"
        ~ " '''', '''''') || ''' as ' || typeof(key) || ')', ', ')"
        ~ " from (select distinct k.key from (" ~ keys ~ ") as k"
        ~ " where k.key is not null limit " ~ (limit + 1) ~ ")"
    ).rows[0] -%}
    {%- if found[0] == 0 -%}
        {{- return('false') -}}
    {%- elif found[0] > limit -%}
        {{- return(subquery) -}}
    {%- endif -%}
    {%- set condition = column ~ ' in (' ~ found[4] ~ ')' -%}
    {%- if bounds -%}
        {%- set condition = condition
            ~ ' and ' ~ bounds[0] ~ " >= cast('" ~ found[2] ~ "' as " ~ found[1] ~ ")"
            ~ ' and ' ~ bounds[0] ~ " < cast('" ~ found[3] ~ "' as " ~ found[1] ~ ") + "
            ~ bounds[1] -%}
    {%- endif -%}
    {{- return(condition) -}}
{%- endmacro %}
