"""One Granite-MoE-1B-A400M layer's experts (hidden 1024, 32 experts of 512, 8 a token), one token, 2 threads:
onnxruntime's MoE (fp32), QMoE (int4, accuracy level 4 and 0) and every expert as int4 MatMulNBits (dense).

    python benchmarks/moe_kernels.py
"""

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgepipe.graph import gptq

E, H, INTER, K = 32, 1024, 512, 8
rng = np.random.default_rng(0)
fc1 = (rng.standard_normal((E, 2 * INTER, H)) * 0.02).astype(np.float32)
fc2 = (rng.standard_normal((E, H, INTER)) * 0.02).astype(np.float32)


def pack(w, bs=32):
    qs = [gptq.rtn(w[e].T, 4, bs, clips=(1.0,)) for e in range(w.shape[0])]
    n = w.shape[1]
    d, s, z = zip(*(q.packed() for q in qs), strict=False)
    return (
        np.stack([x.reshape(n, -1) for x in d]),
        np.stack([x.reshape(n, -1) for x in s]),
        np.stack([x.reshape(n, -1) for x in z]),
    )


def sess(nodes, inits, nlayers=8):
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x0", T.FLOAT, [None, H]), h.make_tensor_value_info("r", T.FLOAT, [None, E])],
        [h.make_tensor_value_info(f"x{nlayers}", T.FLOAT, None)],
        inits,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


L = 4
attrs = dict(
    k=K,
    activation_type="swiglu",
    swiglu_fusion=1,
    normalize_routing_weights=1,
    activation_alpha=1.0,
    activation_beta=0.0,
)
# fp32 MoE, L layers sharing weights? use distinct names but same arrays to keep memory low -> ORT may dedupe; fine
fp = sess(
    [
        h.make_node("MoE", [f"x{layer}", "r", "fc1", "", "fc2"], [f"x{layer + 1}"], domain="com.microsoft", **attrs)
        for layer in range(L)
    ],
    [nh.from_array(fc1, "fc1"), nh.from_array(fc2, "fc2")],
    L,
)
p1, s1, z1 = pack(fc1)
p2, s2, z2 = pack(fc2)
qin = [
    nh.from_array(a, n) for a, n in zip((p1, s1, z1, p2, s2, z2), ("p1", "s1", "z1", "p2", "s2", "z2"), strict=False)
]
q4 = sess(
    [
        h.make_node(
            "QMoE",
            [f"x{layer}", "r", "p1", "s1", "", "p2", "s2", "", "", "", "", "z1", "z2"],
            [f"x{layer + 1}"],
            domain="com.microsoft",
            expert_weight_bits=4,
            block_size=32,
            accuracy_level=4,
            **attrs,
        )
        for layer in range(L)
    ],
    qin,
    L,
)
q0 = sess(
    [
        h.make_node(
            "QMoE",
            [f"x{layer}", "r", "p1", "s1", "", "p2", "s2", "", "", "", "", "z1", "z2"],
            [f"x{layer + 1}"],
            domain="com.microsoft",
            expert_weight_bits=4,
            block_size=32,
            accuracy_level=0,
            **attrs,
        )
        for layer in range(L)
    ],
    qin,
    L,
)
# dense int4: every expert MatMulNBits
nodes = []
inits = list(qin[:0])
for e in range(E):
    d1, sc1, zz1 = gptq.rtn(fc1[e].T, 4, 32, clips=(1.0,)).packed()
    d2, sc2, zz2 = gptq.rtn(fc2[e].T, 4, 32, clips=(1.0,)).packed()
    inits += [
        nh.from_array(d1, f"d1_{e}"),
        nh.from_array(sc1, f"s1_{e}"),
        nh.from_array(zz1, f"z1_{e}"),
        nh.from_array(d2, f"d2_{e}"),
        nh.from_array(sc2, f"s2_{e}"),
        nh.from_array(zz2, f"z2_{e}"),
    ]
for layer in range(L):
    outs = []
    for e in range(E):
        nodes.append(
            h.make_node(
                "MatMulNBits",
                [f"x{layer}", f"d1_{e}", f"s1_{e}", f"z1_{e}"],
                [f"h{layer}_{e}"],
                domain="com.microsoft",
                K=H,
                N=2 * INTER,
                bits=4,
                block_size=32,
                accuracy_level=4,
            )
        )
        nodes.append(h.make_node("Slice", [f"h{layer}_{e}", "st", "en", "ax", "stp"], [f"g{layer}_{e}"]))
        nodes.append(h.make_node("Slice", [f"h{layer}_{e}", "st1", "en", "ax", "stp"], [f"u{layer}_{e}"]))
        nodes.append(h.make_node("Sigmoid", [f"g{layer}_{e}"], [f"sg{layer}_{e}"]))
        nodes.append(h.make_node("Mul", [f"g{layer}_{e}", f"sg{layer}_{e}"], [f"a{layer}_{e}"]))
        nodes.append(h.make_node("Mul", [f"a{layer}_{e}", f"u{layer}_{e}"], [f"b{layer}_{e}"]))
        nodes.append(
            h.make_node(
                "MatMulNBits",
                [f"b{layer}_{e}", f"d2_{e}", f"s2_{e}", f"z2_{e}"],
                [f"y{layer}_{e}"],
                domain="com.microsoft",
                K=INTER,
                N=H,
                bits=4,
                block_size=32,
                accuracy_level=4,
            )
        )
        outs.append(f"y{layer}_{e}")
    nodes.append(h.make_node("Sum", outs, [f"x{layer + 1}"]))
inits += [
    nh.from_array(np.array([0], np.int64), "st"),
    nh.from_array(np.array([1], np.int64), "st1"),
    nh.from_array(np.array([2 * INTER], np.int64), "en"),
    nh.from_array(np.array([1], np.int64), "ax"),
    nh.from_array(np.array([2], np.int64), "stp"),
]
dn = sess(nodes, inits, L)
x = rng.standard_normal((1, H)).astype(np.float32) * 0.1
r = rng.standard_normal((1, E)).astype(np.float32)
for name, s in [
    ("MoE fp32", fp),
    ("QMoE int4 acc4", q4),
    ("QMoE int4 acc0", q0),
    ("dense int4 (32 experts MatMulNBits)", dn),
]:
    for _ in range(5):
        s.run(None, {"x0": x, "r": r})
    ts = []
    for _ in range(40):
        t = time.perf_counter()
        s.run(None, {"x0": x, "r": r})
        ts.append(time.perf_counter() - t)
    print(f"{name}: {np.median(ts) / L * 1e3:.3f} ms per layer (1 token)")
