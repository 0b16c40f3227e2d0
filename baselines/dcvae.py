"""DC-VAE (Parmar et al., CVPR 2021, "Dual Contradistinctive Generative Autoencoder"), one of the
autoencoders of the second paper's comparison (the others in autoencoders.py and alae.py).

A VAE whose pixel likelihood is replaced by two "contradistinctive" losses, both through one
discriminator D: set-level adversarial (real x against reconstructions x' = G(E(x)) and samples
G(z)) and instance-level contrastive: InfoNCE in D's embeddings, where a reconstruction (query)
must pick out its own input (key, embedded by D_key, a momentum copy of D, as MoCo) among the keys
of past inputs kept in a queue, at a fine scale (D's first layer) and a coarse one (its end).
A small KL keeps the codes near N(0, I); encode = mu. The step is the one of DC-VAE's code
(mlpc-ucsd/DC-VAE, train.py), the default here:

    every step           D       hinge: relu(1 - D(x)) + (relu(1 + D(G(z))) + relu(1 + D(x'))) / 2
    every n_critic-th    E, G    -(D(G(z')) + D(x')) / 2 + KL, with twice the batch of z'
    (5th) step, then     E, G, D InfoNCE(D(x'), D_key(x), the queue) + KL, D_key <- its momentum
                                 update first; the keys then go into the queue

with Adam 2e-4 (0, 0.9) for every network. Beside it, as flags: what this file did before issue
#28 (`--gan-loss ns --n-critic 1 --beta1 0.5 --beta2 0.999 --in-batch-negatives --centre
--queue 4096 --kl-weight 1e-4 --sample-factor 1`, though D then learned InfoNCE in its own step
and E, G took both losses in one update; that step is not kept) and a pixel term
(`--pixel-weight`; 0 as published). Departures that are not flags: the networks (DCGAN's, shared
with VAE and BiGAN, at CPU sizes, instead of the code's AutoGAN residual cells; D's real/fake logit
from its own linear layer rather than from the 16-d coarse embedding), an EMA of the encoder beside
the decoder's, the training length. docs/recipes.md has the table and the reasons.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

import method as M
from baselines.autoencoders import (Autoencoder, AutoencoderConfig, Encoder, kl_divergence,
                                    reparameterise, widths)
from baselines.gan import adam_step, adversarial_loss, generator_loss


@dataclass
class DCVAEConfig(AutoencoderConfig):
    beta1: float = M.arg(0.0, "Adam beta1 (DC-VAE's code: 0)")
    beta2: float = M.arg(0.9, "Adam beta2 (DC-VAE's code: 0.9)")
    gan_loss: str = M.arg("hinge", "adversarial loss: hinge (DC-VAE's code) or ns "
                                   "(non-saturating logistic)", choices=("hinge", "ns"))
    n_critic: int = M.arg(5, "D steps per E and G step (DC-VAE's code: 5)")
    sample_factor: int = M.arg(2, "samples G(z) per real image in E and G's adversarial step "
                                  "(DC-VAE's code: 128 for a batch of 64)")
    kl_weight: float = M.arg(6.4e-5, "weight of the mean KL per image, in both E and G updates "
                                     "(DC-VAE's code: 1e-6 on the batch's sum, i.e. 6.4e-5 at "
                                     "its batch of 64)")
    contrastive_weight: float = M.arg(1.0, "weight of the instance-level contrastive loss")
    contrastive_dim: int = M.arg(16, "size of the discriminator's contrastive embedding")
    temperature: float = M.arg(0.07, "InfoNCE temperature")
    queue: int = M.arg(8192, "past real images' keys kept as InfoNCE's negatives (DC-VAE's "
                             "MoCo queue: 8,192)")
    in_batch_negatives: bool = M.arg(False, "also the batch's other images as negatives (before "
                                            "#28; DC-VAE's code: the queue only)")
    centre: bool = M.arg(False, "subtract the real images' mean embedding from keys and queries "
                                "(before #28; not in DC-VAE's code)")
    pixel_weight: float = M.arg(0.0, "weight of the pixel MSE |x - G(z)|^2 for E and G beside the "
                                     "adversarial term (50: the VAE's likelihood, sigma 0.1); 0: "
                                     "DC-VAE as published, the contrastive term in its place")

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("contrastive_dim", "temperature", "n_critic",
                                       "sample_factor"),
                       nonnegative=("kl_weight", "contrastive_weight", "queue", "pixel_weight"))
        if not self.queue and not self.in_batch_negatives:
            raise ValueError("--queue 0 leaves InfoNCE without negatives; give --queue > 0 or "
                             "--in-batch-negatives")

# -----------------------------------------------------------------------------
# the discriminator and its contrastive loss


class ContrastiveDiscriminator(nn.Module):
    """DC-VAE's D: one trunk, a real/fake logit (set level), and two embeddings for the
    contrastive loss (instance level), taken at two scales as DC-VAE's multi-scale loss: one from
    the trunk's first layer (a 1x1 conv to one map at half the image size, flattened, then a
    linear layer: it keeps where things are) and one from the end of the trunk (what they are).
    Spectral norm on the trunk and the logit, as DC-VAE's D has."""

    def __init__(self, c):
        super().__init__()
        trunk = Encoder(c, 1).trunk
        for i, layer in enumerate(trunk):
            if isinstance(layer, nn.Conv2d):
                trunk[i] = spectral_norm(layer)
        self.first, self.rest = trunk[:2], trunk[2:]
        dim = widths(c)[-1] * 16
        self.logit, self.embed = spectral_norm(nn.Linear(dim, 1)), nn.Linear(dim, c.contrastive_dim)
        self.embed_local = nn.Sequential(nn.Conv2d(c.channels, 1, 1), nn.Flatten(),
                                         nn.Linear((c.image_size // 2) ** 2, c.contrastive_dim))

    def forward(self, x):
        """(logit (B, 1), [local, global] embeddings (B, contrastive_dim) each, not normalised)."""
        h1 = self.first(x)
        h = self.rest(h1)
        return self.logit(h), [self.embed_local(h1), self.embed(h)]


def info_nce(query, keys, temperature, negatives=None, first=0, in_batch=True):
    """InfoNCE: row i of query must pick row first + i of keys (cross-entropy over cosine
    similarities / temperature) among the extra `negatives` and, when in_batch, the other rows of
    keys too (DC-VAE's code, as MoCo: the queue alone). log(candidates) when all similarities are
    equal. first: where this process's rows start in keys gathered from every process."""
    q = F.normalize(query, dim=1)
    k = F.normalize(keys, dim=1)
    own = first + torch.arange(len(q), device=q.device)
    if in_batch:
        logits, target = q @ k.T, own
    else:
        logits, target = (q * k[own]).sum(1, keepdim=True), torch.zeros_like(own)
    if negatives is not None:
        logits = torch.cat([logits, q @ F.normalize(negatives, dim=1).T], 1)
    return F.cross_entropy(logits / temperature, target)


def multiscale_info_nce(queries, keys, temperature, negatives, first=0, in_batch=True):
    """DC-VAE's multi-scale contrastive loss: the mean of InfoNCE over the scales' embeddings."""
    return sum(info_nce(q, k, temperature, n, first, in_batch)
               for q, k, n in zip(queries, keys, negatives)) / len(queries)


def centred(embeddings, centres):
    """Each scale's embeddings less the real images' mean embedding at that scale (--centre). The
    trunk's features share a large common part; with in-batch negatives and no centring, every
    image's embedding pointed one way and InfoNCE sat at log(batch) for 1,200 steps here. The
    centre is the real images', for queries too: centred by their own mean, near-identical
    reconstructions would have had their tiny differences blown up to unit length, and the decoder
    learned exactly that (one image for every input, told apart by a faint texture)."""
    return [e - c for e, c in zip(embeddings, centres)]

# -----------------------------------------------------------------------------
# the method


class DCVAE(Autoencoder):
    name = "dcvae"
    Config = DCVAEConfig
    LOG = ("d_adv", "g_adv", "nce", "kl", "mse", "lr")
    KEY_MOMENTUM = 0.999  # of D_key, as MoCo and DC-VAE's code

    def __init__(self, config, device="cpu", **options):
        super().__init__(config, device, **options)
        self.D = ContrastiveDiscriminator(config).to(device)
        self.D_key = copy.deepcopy(self.D).requires_grad_(False).eval()
        self.optimizer_d = self.adam(self.D.parameters())
        self.queue = F.normalize(torch.randn(2, config.queue, config.contrastive_dim,
                                             device=device), dim=2)
        self.queue_at = torch.zeros((), dtype=torch.long)

    def train_step(self, batch, step):
        """A D step; every n_critic-th step (the first included, as DC-VAE's code) also E and G's
        adversarial step, then the contrastive step, then the EMAs (counted in E and G steps)."""
        c, x = self.config, batch[0]
        self.E.train(), self.G.train()
        values = {"d_adv": self.d_step(x), "lr": c.lr}
        if step % c.n_critic == 0:
            values.update(self.adversarial_step(x))
            values["nce"] = self.contrastive_step(x)
            self.update_ema(step // c.n_critic)
        return values

    def reconstruction(self, x):
        """(G(z) for z drawn from q(z | x), mu, log sigma^2)."""
        mu, logvar = self.E(x).chunk(2, 1)
        return self.G(reparameterise(mu, logvar)), mu, logvar

    def d_step(self, x):
        """D tells real x from reconstructions and samples (half weight each, as DC-VAE's code)."""
        kind = self.config.gan_loss
        with torch.no_grad():
            recon, mu, _ = self.reconstruction(x)
            sample = self.G(torch.randn_like(mu))
        real_s, rec_s, smp_s = (self.D(v)[0] for v in (x, recon, sample))
        loss = adversarial_loss(kind, real_s, True) + 0.5 * (
            adversarial_loss(kind, rec_s, False) + adversarial_loss(kind, smp_s, False))
        adam_step(loss, self.optimizer_d)
        return loss.item()

    def adversarial_step(self, x):
        """E and G fool D with reconstructions and sample_factor x batch samples, plus kl_weight x
        KL and pixel_weight x the pixel MSE (logged either way); D frozen for it."""
        c = self.config
        recon, mu, logvar = self.reconstruction(x)
        sample = self.G(torch.randn(c.sample_factor * len(x), c.latent_dim, device=x.device))
        self.D.requires_grad_(False)
        g_adv = 0.5 * (generator_loss(c.gan_loss, self.D(recon)[0])
                       + generator_loss(c.gan_loss, self.D(sample)[0]))
        kl = kl_divergence(mu, logvar).mean()
        with torch.set_grad_enabled(c.pixel_weight > 0):
            mse = (recon - x).square().mean()
        adam_step(g_adv + c.kl_weight * kl + c.pixel_weight * mse, self.optimizer)
        self.D.requires_grad_(True)
        return {"g_adv": g_adv.item(), "kl": kl.item(), "mse": mse.item()}

    def contrastive_step(self, x):
        """E, G and D (its trunk and embeddings) on InfoNCE between a new reconstruction's
        embeddings by D (queries) and the real images' by D_key, moved towards D first (keys), with
        the queue as negatives (and the batch's other keys with in_batch_negatives), plus kl_weight
        x KL; then the keys go into the queue. Under torchrun the keys are every process's (as MoCo
        gathers them): the same queue, centres and negatives on every rank, the loss that of one
        process with the global batch. Returns InfoNCE."""
        c = self.config
        M.update_ema(self.D_key, self.D, self.KEY_MOMENTUM)
        first = M.rank() * len(x)  # this process's rows among the gathered keys
        with torch.no_grad():
            keys = [M.gather_over_processes(k) for k in self.D_key(x)[1]]
            centres = [k.mean(0) if c.centre else 0 for k in keys]
            keys = [F.normalize(k, dim=1) for k in centred(keys, centres)]
        recon, mu, logvar = self.reconstruction(x)
        queries = centred(self.D(recon)[1], centres)
        negatives = [q if c.queue else None for q in self.queue]
        nce = multiscale_info_nce(queries, keys, c.temperature, negatives, first,
                                  c.in_batch_negatives)
        kl = kl_divergence(mu, logvar).mean()
        adam_step(c.contrastive_weight * nce + c.kl_weight * kl, self.optimizer,
                  self.optimizer_d)
        self.enqueue(keys)
        return nce.item()

    def check_batch(self, batch_size, world):
        if self.config.centre and batch_size * world < 2:
            raise ValueError("dcvae --centre needs 2 or more images per step (--batch-size x "
                             "processes): it centres the contrastive keys by their mean, which "
                             "leaves nothing of a single image's key; raise --batch-size")

    def enqueue(self, keys):
        """Put the step's keys (every process's) in place of the oldest ones of the queue (a
        ring); of more keys than it holds, the last (no slot written twice in one step)."""
        size = self.queue.shape[1]
        if size:
            keys = torch.stack(keys)[:, -size:]
            at = (self.queue_at + torch.arange(keys.shape[1])) % size
            self.queue[:, at] = keys.to(self.queue.dtype)
            self.queue_at.copy_((self.queue_at + keys.shape[1]) % size)

    def state_dict(self):
        return {**super().state_dict(), "queue": self.queue.clone(),
                "queue_at": self.queue_at.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.queue.copy_(state["queue"])
        self.queue_at.copy_(state["queue_at"])
