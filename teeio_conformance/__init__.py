"""teeio-conformance: a property-based conformance suite for the Linux TEE-IO device-assignment lifecycle.

Everything installs under this one import root. The repository keeps its top-level directories, and this
package names them (each entry here is a link to the directory of the same name at the top of the tree):

* ``teeio_conformance.contract`` -- what every system under test meets: trace events, errors, profiles, codecs;
* ``teeio_conformance.conformance`` -- the rules, the state machines, the pytest plugin and the CLI;
* ``teeio_conformance.reference_impl`` -- the reference implementation of the whole stack (the default SUT);
* ``teeio_conformance.strategies`` -- Hypothesis strategies for messages and faults;
* ``teeio_conformance.reports`` -- the report model and its writers.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("teeio-conformance")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
