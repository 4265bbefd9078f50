{% macro get_where_subquery(relation) -%}
    {#- What a generic data test reads of the node it tests (dbt's own macro, extended).
        dbt's `where` config applies as in dbt. Besides, when the run is given the var
        `salesflow_tests_since` (a dlt load id) and the tested node names the column
        holding the load that wrote each row (`meta.load_column`), a test whose verdict
        on a row depends on that row alone (`row_tests()`) reads only the rows loaded
        after that load, and `unique` reads only the keys such a row holds (with every
        row holding them, new or old). salesflow's periodic data tests pass the load at
        the start of the last run whose tests all passed: over years of history a run
        costs what the new rows cost. Runs without the var (builds, `dbt test`, the
        periodic run after a failure, the whole run watch makes now and then) read
        everything. -#}
    {%- set where = config.get('where', '') -%}
    {%- set since = var('salesflow_tests_since', '') -%}
    {%- set scoped = tested_since_filter(relation, since) if since else '' -%}
    {%- set conditions = [] -%}
    {%- if where -%}{%- do conditions.append('(' ~ where ~ ')') -%}{%- endif -%}
    {%- if scoped -%}{%- do conditions.append(scoped) -%}{%- endif -%}
    {%- if conditions -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ conditions | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}


{% macro row_tests() %}
    {#- Generic tests whose verdict on a row depends on that row alone (relationships:
        on the row and the whole parent, which the test still reads whole). -#}
    {%- do return(['not_null', 'accepted_values', 'relationships', 'not_after',
                   'non_negative', 'within_range']) -%}
{%- endmacro %}


{% macro tested_since_filter(relation, since) %}
    {#- The condition restricting the test being compiled to what loaded after `since`
        ('' when it cannot be restricted: a singular test, a test of another kind, a
        node without `meta.load_column`). -#}
    {%- set test = model.get('test_metadata') if model is mapping else none -%}
    {%- set attached = model.get('attached_node') if model is mapping else none -%}
    {%- if not test or not attached or attached not in graph.nodes -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set column = (graph.nodes[attached].get('config', {}).get('meta', {}) or {}).get('load_column') -%}
    {%- if not column -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set newer = adapter.quote(column) ~ " > '" ~ (since | replace("'", "''")) ~ "'" -%}
    {%- if test.get('name') in row_tests() -%}
        {%- do return(newer) -%}
    {%- elif test.get('name') == 'unique' and test.get('kwargs', {}).get('column_name') -%}
        {%- set key = test['kwargs']['column_name'] -%}
        {%- do return(key ~ ' in (select ' ~ key ~ ' from ' ~ relation ~ ' where ' ~ newer ~ ')') -%}
    {%- endif -%}
    {%- do return('') -%}
{%- endmacro %}
