"""gsem: an exchange engine for Service Incident (SIS) documents between call-handling systems."""

__all__: list[str] = []
