# Times fla's naive PyTorch references (gated delta rule, KDA) at T = 16384, H = 8, D = 128 on 2 threads;
# run beside `attn --threads 2 bench --causal --shape b1,h8,s16k,d128 --method gated-deltanet,kda`.
# Expects the unpacked fla-core wheel at /tmp/fla-x (see bench/linear_peer.py).
import importlib.util, time, math, torch
torch.set_num_threads(2)
def load(p,n):
    s=importlib.util.spec_from_file_location(n,p); m=importlib.util.module_from_spec(s); s.loader.exec_module(m); return m
g=load("/tmp/fla-x/fla/ops/gated_delta_rule/naive.py","g"); k_=load("/tmp/fla-x/fla/ops/kda/naive.py","k")
T,H,D=16384,8,128
torch.manual_seed(0)
q,k,v=(torch.randn(1,T,H,D) for _ in range(3))
q=q/q.norm(dim=-1,keepdim=True); k=k/k.norm(dim=-1,keepdim=True)
beta=torch.full((1,T,H),0.5); gg=torch.full((1,T,H),math.log(0.99))
gk=torch.full((1,T,H,D),math.log(0.99))
with torch.no_grad():
    for name,f in [("fla naive_chunk_gated_delta_rule",lambda: g.naive_chunk_gated_delta_rule(q,k,v,gg,beta,chunk_size=64)),
                   ("fla naive_recurrent_gated_delta_rule",lambda: g.naive_recurrent_gated_delta_rule(q,k,v,beta,gg)),
                   ("fla naive_recurrent_kda",lambda: k_.naive_recurrent_kda(q,k,v,gk,beta))]+([("fla naive_chunk_kda",lambda: k_.naive_chunk_kda(q,k,v,gk,beta,chunk_size=64))] if hasattr(k_,"naive_chunk_kda") else []):
        t=time.perf_counter(); f(); print(f"{name}: {time.perf_counter()-t:.2f} s", flush=True)
