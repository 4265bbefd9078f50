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
