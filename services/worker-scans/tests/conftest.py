import pytest

from celery_stack_scans.demo_site import DemoSite, SiteOptions, make_certs
from celery_stack_scans.fetch import FetchOptions
from celery_stack_scans.scanner import ScanOptions
from celery_stack_scans.ssrf import Guard


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("tls")), ["site.test", "127.0.0.1"])


@pytest.fixture(scope="session")
def site(certs):
    """A real HTTP + HTTPS site on 127.0.0.1 (certificate for site.test from our own CA)."""
    s = DemoSite(https_port=0, cert=certs["cert"], key=certs["key"], opts=SiteOptions(slow=0.2))
    yield s
    s.close()


def options(certs, *, allow=("127.0.0.1/32",), resolve=None, max_pages=10, **fetch):
    return ScanOptions(
        fetch=FetchOptions(
            guard=Guard.from_cidrs(allow),
            resolve_overrides=resolve
            if resolve is not None
            else {"site.test": ["127.0.0.1"], "wrong.test": ["127.0.0.1"]},
            ca_bundle=fetch.pop("ca_bundle", certs["ca"]),
            timeout=fetch.pop("timeout", 5.0),
            **fetch,
        ),
        max_pages=max_pages,
        cert_warn_days=30,
    )


@pytest.fixture
def scan_options(certs):
    return lambda **kw: options(certs, **kw)
