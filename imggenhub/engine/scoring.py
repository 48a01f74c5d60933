"""CLIP scores: how well an image matches its prompt, as the seed documents measure it:
100 x the cosine similarity of the image's and the prompt's CLIP embeddings, floored at 0.
The model is loaded once per process; scores from different CLIP backbones do not
compare. torch and transformers are imported inside the functions."""

from __future__ import annotations

from .wire import TINY_CLIP

DEFAULT_SCORE_MODEL = "openai/clip-vit-large-patch14"


def build_tiny_clip(seed: int = 0):
    """A tiny random CLIP (model, tokenizer, image processor), built offline from configs:
    it checks the plumbing, its scores mean nothing."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from .tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                     "num_attention_heads": 4, "num_hidden_layers": 2,
                     "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, tokenizer, processor


class Scorer:
    """One CLIP model, loaded once, scoring (image, prompt) pairs."""

    def __init__(self, model_id: str = DEFAULT_SCORE_MODEL, device: str = "cpu"):
        import torch

        if model_id == TINY_CLIP:
            self.model, self.tokenizer, self.processor = build_tiny_clip()
        else:
            from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

            self.model = CLIPModel.from_pretrained(model_id).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(model_id)
            self.processor = CLIPImageProcessor.from_pretrained(model_id)
        self.device = device
        self.model.to(device)
        self.torch = torch
        self.model_id = model_id

    def embeddings(self, images, prompts: list[str]):
        """(image embeddings, text embeddings), each normalised to length 1."""
        torch = self.torch
        with torch.no_grad():
            pixels = self.processor(images=[i.convert("RGB") for i in images],
                                    return_tensors="pt")["pixel_values"].to(self.device)
            text = self.tokenizer(prompts, padding=True, truncation=True,
                                  max_length=self.tokenizer.model_max_length, return_tensors="pt")
            image_emb = _features(self.model.get_image_features(pixel_values=pixels))
            text_emb = _features(self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device)))
        image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
        text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
        return image_emb.float().cpu(), text_emb.float().cpu()

    def scores(self, images, prompts: list[str]) -> list[float]:
        image_emb, text_emb = self.embeddings(images, prompts)
        cos = (image_emb * text_emb).sum(dim=-1)
        return [round(max(100.0 * float(c), 0.0), 4) for c in cos]


def _features(output):
    """transformers 5 may hand back a model output rather than the tensor itself."""
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        if hasattr(output, name) and getattr(output, name) is not None and not hasattr(output, "norm"):
            return getattr(output, name)
    return output
