{% macro hash_pii(expression) %}
    {{- return(adapter.dispatch('hash_pii')(expression)) -}}
{% endmacro %}

{#- HMAC-SHA256 (RFC 2104): sha256(opad || sha256(ipad || value)), the two padded keys
    read from the connection's session state (loaders/pii.py), never written here. On
    DuckDB an unset variable is a typeless null, which would fold the whole hash to null:
    the cast keeps the error for a connection without the key. -#}

{% macro default__hash_pii(expression) %}
    {%- set missing = "error('no key for hashing personal data on this connection:"
        ~ " run dbt from the project (profiles.yml sets it), see loaders/pii.py')" -%}
    sha256(
        unhex(coalesce(cast(getvariable('salesflow_pii_opad') as varchar), {{ missing }}))
        || unhex(sha256(
            unhex(coalesce(cast(getvariable('salesflow_pii_ipad') as varchar), {{ missing }}))
            || encode(lower(trim(cast({{ expression }} as varchar))))
        ))
    )
{%- endmacro %}

{% macro postgres__hash_pii(expression) %}
    encode(sha256(
        decode(current_setting('salesflow.pii_opad'), 'hex')
        || sha256(
            decode(current_setting('salesflow.pii_ipad'), 'hex')
            || convert_to(lower(trim(cast({{ expression }} as text))), 'UTF8')
        )
    ), 'hex')
{%- endmacro %}

{#- On Spark the padded keys are read by Spark SQL's variable substitution, done when
    Spark parses each statement, so the compiled SQL, dbt's logs and artifacts hold only
    the placeholders: the session's runtime settings `spark.salesflow.pii_ipad` /
    `spark.salesflow.pii_opad` if set (`spark.conf.set` on the session dbt runs in:
    effective at once), else the environment variables SALESFLOW_PII_IPAD /
    SALESFLOW_PII_OPAD of the Spark driver (with the session method, dbt's process, as
    it was when its first dbt command started Spark). Spark keeps a view's text as
    substituted: a model hashing personal data is a table on Spark (dbt_project.yml),
    never a view. Neither set, the placeholders are not hex and the query raises the
    error below (on the first row hashed). -#}

{% macro spark__hash_pii(expression) %}
    {%- set missing = "raise_error('no key for hashing personal data on this Spark"
        ~ " session: set spark.salesflow.pii_ipad and _opad on it, or SALESFLOW_PII_IPAD"
        ~ " and _OPAD for dbt, see loaders/pii.py')" -%}
    {%- set pads = {} -%}
    {%- for name in ['ipad', 'opad'] -%}
        {%- set setting = "'${spark.salesflow.pii_" ~ name ~ "}'" -%}
        {%- set variable = "'${env:SALESFLOW_PII_" ~ (name | upper) ~ "}'" -%}
        {%- do pads.update({name: "unhex(case"
            ~ " when " ~ setting ~ " rlike '^[0-9a-f]{128}$' then " ~ setting
            ~ " when " ~ variable ~ " rlike '^[0-9a-f]{128}$' then " ~ variable
            ~ " else " ~ missing ~ " end)"}) -%}
    {%- endfor -%}
    sha2(concat(
        {{ pads['opad'] }},
        unhex(sha2(concat(
            {{ pads['ipad'] }},
            encode(lower(trim(cast({{ expression }} as string))), 'UTF-8')
        ), 256))
    ), 256)
{%- endmacro %}
