"""Reading Prometheus metrics in tests: this process's registry, or a scraped exposition."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families


def local_sample(name: str, **labels: str) -> float:
    """A sample of this process's default registry (in-process apps); 0 if not recorded yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape, parsed with prometheus_client's own parser."""

    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]
    types: Mapping[str, str]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples, types)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None if the scrape lacks it."""
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= sample_labels
        )

    def has(self, name: str) -> bool:
        """Whether any sample of `name` is present."""
        return any(sample == name for sample, _ in self.samples)


async def scrape(
    client: httpx.AsyncClient, url: str = "/metrics", *, token: str | None = None
) -> Scrape:
    """GET the exposition at `url` (200 expected) and parse it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape.parse(response.text)
