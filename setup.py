"""Maps the repository's top-level folders onto the ``pbkv`` import namespace.

folder            import name
pbkv/             pbkv              (CLI, shared helpers)
predictor/        pbkv.predictor
cache_manager/    pbkv.cache_manager
engine_adapter/   pbkv.engine_adapter
training/         pbkv.training
service/          pbkv.service
dashboard/        pbkv.dashboard
bench/            pbkv.bench
proto/pbkv/v1/    pbkv.v1           (generated protobuf / gRPC stubs)
"""

from setuptools import find_packages, setup

ROOTS = {
    "pbkv": "pbkv",
    "pbkv.predictor": "predictor",
    "pbkv.cache_manager": "cache_manager",
    "pbkv.engine_adapter": "engine_adapter",
    "pbkv.training": "training",
    "pbkv.service": "service",
    "pbkv.dashboard": "dashboard",
    "pbkv.bench": "bench",
    "pbkv.v1": "proto/pbkv/v1",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
