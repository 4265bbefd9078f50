{% macro hash_pii(expression) %}
    {{- return(adapter.dispatch('hash_pii')(expression)) -}}
{% endmacro %}

{% macro default__hash_pii(expression) %}
    sha256(lower(trim(cast({{ expression }} as varchar))))
{%- endmacro %}

{% macro postgres__hash_pii(expression) %}
    encode(sha256(convert_to(lower(trim(cast({{ expression }} as text))), 'UTF8')), 'hex')
{%- endmacro %}
