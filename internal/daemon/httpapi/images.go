package httpapi

import (
	"context"
	"net/http"

	"github.com/bangerdev/banger/api"
)

func (h *Handler) listImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := h.b.Images.ListImages(r.Context())
	reply(w, 200, imgs, err)
}

func (h *Handler) getImage(w http.ResponseWriter, r *http.Request) {
	img, err := h.b.Images.GetImage(r.Context(), r.PathValue("name"))
	reply(w, 200, img, err)
}

func (h *Handler) buildImage(w http.ResponseWriter, r *http.Request) {
	var req api.BuildImageRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := h.b.Images.BuildImage(r.Context(), req)
	replyOp(w, id, err)
}

func (h *Handler) deleteImage(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.b.Images.DeleteImage(r.Context(), r.PathValue("name")))
}

// Export, import and register copy whole images: they finish even when
// the client goes away, rather than leave half a copy behind.

func (h *Handler) exportImage(w http.ResponseWriter, r *http.Request) {
	var req api.PathRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	replyEmpty(w, h.b.Images.ExportImage(context.WithoutCancel(r.Context()), r.PathValue("name"), req.Path))
}

func (h *Handler) importImage(w http.ResponseWriter, r *http.Request) {
	var req api.PathRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	img, err := h.b.Images.ImportImage(context.WithoutCancel(r.Context()), req.Path)
	reply(w, 200, img, err)
}

func (h *Handler) verifyImage(w http.ResponseWriter, r *http.Request) {
	id, err := h.b.Images.VerifyImage(r.Context(), r.PathValue("name"))
	replyOp(w, id, err)
}

func (h *Handler) promoteImage(w http.ResponseWriter, r *http.Request) {
	img, err := h.b.Images.PromoteImage(r.Context(), r.PathValue("name"))
	reply(w, 200, img, err)
}

func (h *Handler) registerImage(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterImageRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	img, err := h.b.Images.RegisterImage(context.WithoutCancel(r.Context()), req)
	reply(w, 200, img, err)
}
