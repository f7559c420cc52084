"""The settings of one TensorRT build, each read back: targets, compatibility, the profile.

The builder config and network of :mod:`provisioning.backends.tensorrt`'s build path are
handed in (with the ``trt`` module), so the same steps serve TensorRT 10.x, 11.x and
TensorRT-RTX. A setting the builder does not take is refused with the reason TensorRT
logged, never recorded as if it had been; a parser error names the node that failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from .trt_features import HARDWARE_COMPATIBILITY_LEVELS, TF32_MIN_CC
from .trt_logging import BuildLog

if TYPE_CHECKING:  # pragma: no cover
    from ..host import HostCapabilities
    from ..specs import BackboneSpec


def tolerance_basis(spec: "BackboneSpec", host: "HostCapabilities", tf32: bool) -> str:
    """The tolerance basis: the precision's, or TF32's for fp32 where TF32 is on (compute capability 8.0+)."""
    if spec.precision == "fp32" and tf32 and host.gpu is not None and host.gpu.compute_capability >= TF32_MIN_CC:
        return "tf32"
    return spec.precision


def set_targets(trt: Any, config: Any, targets: tuple[str, ...], build_log: BuildLog, where: str) -> list[str]:
    """TensorRT-RTX: the compute capabilities the plan is built for, each read back."""
    if not targets:
        raise BackendError(f"{where}: no compute_capabilities to build for; list them in the config")
    config.num_compute_capabilities = len(targets)
    for index, target in enumerate(targets):
        member = getattr(trt.ComputeCapability, target.upper(), None)
        if member is None:
            raise BackendError(f"{where}: TensorRT-RTX {trt.__version__} has no target {target}")
        if not config.set_compute_capability(member, index) or config.get_compute_capability(index) != member:
            raise BackendError(f"{where}: TensorRT-RTX did not take target {target} "
                               f"({build_log.reason('no reason logged')})")
    return list(targets)


def set_hardware_compatibility(trt: Any, config: Any, setting: str, build_log: BuildLog, where: str,
                                product: str) -> str:
    """Set the hardware compatibility level and read it back: never record what was not taken."""
    level = HARDWARE_COMPATIBILITY_LEVELS[setting]
    wanted = getattr(trt.HardwareCompatibilityLevel, level)
    config.hardware_compatibility_level = wanted
    taken = config.hardware_compatibility_level
    if taken != wanted:
        warnings = build_log.messages("WARNING", "ERROR")
        reason = " ".join(warnings[-1].split()) if warnings else "no reason logged"
        raise BackendError(f"{where}: {product} did not take hardware_compatibility {setting} (it reads back "
                           f"{getattr(taken, 'name', taken)}: {reason}); set hardware_compatibility: none")
    return level


def optimization_profile(builder: Any, network: Any, spec: "BackboneSpec", where: str,
                          build_log: BuildLog) -> tuple[Any, dict[str, dict[str, list[int]]]]:
    """One profile: the backbone's min/opt/max per input; static inputs min = opt = max."""
    shapes = spec.input_shapes
    profile = builder.create_optimization_profile()
    recorded: dict[str, dict[str, list[int]]] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        name, dims = tensor.name, tuple(int(d) for d in tensor.shape)
        if tensor.is_shape_tensor:
            raise BackendError(f"{where}: input {name!r} is a shape tensor, which this backend cannot profile; "
                               "export the model with the shape as a constant")
        if name in shapes:
            shape = shapes[name]
            if len(shape.opt) != len(dims):
                raise BackendError(f"{where}: field 'inputs.{name}': rank {len(shape.opt)}, but TensorRT "
                                   f"reads rank {len(dims)} {list(dims)}")
            lo, opt, hi = shape.min, shape.opt, shape.max
        elif all(d >= 0 for d in dims):
            lo = opt = hi = dims
        else:
            raise BackendError(f"{where}: ONNX input {name!r} has dynamic dims {list(dims)}; give it a shape "
                               "or a min/opt/max profile under 'inputs'")
        try:
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        except (RuntimeError, TypeError, ValueError) as exc:
            first = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendError(f"{where}: field 'inputs.{name}': TensorRT refused min {list(lo)} opt {list(opt)} "
                               f"max {list(hi)} ({build_log.reason(first)})") from None
        recorded[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    unknown = sorted(set(shapes) - set(recorded))
    if unknown:
        raise BackendError(f"{where}: field 'inputs' names {', '.join(unknown)}, which TensorRT's network "
                           f"does not have (its inputs: {', '.join(recorded) or 'none'})")
    return profile, recorded


def _value(attribute: Any) -> Any:
    return attribute() if callable(attribute) else attribute


def parser_errors(parser: Any, build_log: BuildLog | None = None) -> list[str]:
    """Every parser error as 'node NAME (OP): description [CODE]'."""
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        desc = str(_value(error.desc))
        desc = build_log.clean(desc) if build_log is not None else " ".join(desc.split())
        code = _value(error.code)
        code = getattr(code, "name", code)
        node, name, op = _value(error.node), _value(error.node_name), _value(error.node_operator)
        if name or (isinstance(node, int) and node >= 0):
            label = name or f"#{node}"
            errors.append(f"node {label}" + (f" ({op})" if op else "") + f": {desc} [{code}]")
        else:
            errors.append(f"{desc} [{code}]")
    return errors
