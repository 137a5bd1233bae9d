"""The optimizers train.py offers: 'adamw' (nanoGPT's model.configure_optimizers) or 'muon'.
Muon (torch 2.9+) orthogonalises each update of a block's weight matrix (a few Newton-Schulz steps); the
embeddings, biases and norms keep AdamW. One schedule drives both, Muon's peak being muon_lr."""
import torch

from errors import UserError

MUON_SINCE = (2, 9)  # the first torch release with torch.optim.Muon


def muon_split(model):
    """(Muon's parameters, AdamW's): the 2-D weights inside the blocks, and everything else."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (muon if p.dim() == 2 and name.startswith("transformer.h.") else adamw).append(p)
    return muon, adamw


class MuonWithAdamW:
    """Muon and AdamW as one optimizer (param_groups, step, zero_grad, the state dicts); each group's lr_scale
    turns the schedule's learning rate into its own."""

    def __init__(self, model, cfg, device_type):
        if not hasattr(torch.optim, "Muon"):
            raise UserError(f"optimizer=muon needs torch {'.'.join(map(str, MUON_SINCE))} or newer (this is torch "
                            f"{torch.__version__}); upgrade torch or use --optimizer=adamw")
        matrices, rest = muon_split(model)
        self.muon = torch.optim.Muon(matrices, lr=cfg["muon_lr"], momentum=cfg["muon_momentum"], weight_decay=0.0,
                                     adjust_lr_fn="original")
        self.adamw = torch.optim.AdamW(
            [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
             {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
            lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), fused=device_type in ("cuda", "cpu"))
        self.scale = cfg["muon_lr"] / cfg["learning_rate"] if cfg["learning_rate"] else 0.0
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
        self._set_scales()

    def _set_scales(self):
        for group in self.muon.param_groups:
            group["lr_scale"] = self.scale  # this run's muon_lr, also after loading a checkpoint's groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state):
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        self.param_groups[:] = self.muon.param_groups + self.adamw.param_groups
        self._set_scales()


def build_optimizer(model, cfg, device_type):
    """The optimizer cfg['optimizer'] names, for model's parameters."""
    if cfg["optimizer"] == "muon":
        return MuonWithAdamW(model, cfg, device_type)
    return model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                      device_type)


def state_kind(state):
    """'muon' or 'adamw': which optimizer a checkpoint's optimizer state belongs to."""
    return "muon" if isinstance(state, dict) and "muon" in state and "adamw" in state else "adamw"


def set_lr(optimizer, lr):
    """The schedule's learning rate for this step, scaled per group (Muon's groups run at muon_lr's scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
