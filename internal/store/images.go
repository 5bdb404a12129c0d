package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

const imageColumns = `id, name, fingerprint, dir, is_default, state, suite,
	kernel_version, size_bytes, created_at, manifest, verified_at, verify_error,
	ready_snapshot_id`

func scanImage(r rowScanner) (Image, error) {
	var img Image
	var created, verified string
	if err := r.Scan(&img.ID, &img.Name, &img.Fingerprint, &img.Dir, &img.Default,
		&img.State, &img.Suite, &img.KernelVersion, &img.SizeBytes, &created,
		&img.Manifest, &verified, &img.VerifyError, &img.ReadySnapshotID); err != nil {
		return Image{}, err
	}
	t, err := parseTime(created)
	if err != nil {
		return Image{}, err
	}
	img.CreatedAt = t
	if verified != "" {
		if img.VerifiedAt, err = parseTime(verified); err != nil {
			return Image{}, err
		}
	}
	return img, nil
}

func validateImage(img *Image) error {
	if img.Name == "" {
		return fmt.Errorf("image name is required: %w", ErrInvalid)
	}
	if img.Dir == "" {
		return fmt.Errorf("image %q: dir is required: %w", img.Name, ErrInvalid)
	}
	if !slices.Contains([]string{ImageStateManaged, ImageStateStaged}, img.State) {
		return fmt.Errorf("image %q: unknown state %q: %w", img.Name, img.State, ErrInvalid)
	}
	return nil
}

// imageWriteErr maps constraint failures of an insert or update of img.
func imageWriteErr(err error, img *Image) error {
	switch {
	case isUnique(err, "images.name"):
		return fmt.Errorf("image %q: %w", img.Name, ErrExists)
	case isUnique(err, "images.is_default"):
		return fmt.Errorf("image %q: another image is already the default: %w", img.Name, ErrExists)
	case isUnique(err, "images.id"):
		return fmt.Errorf("image id %s: %w", img.ID, ErrExists)
	}
	return err
}

// CreateImage registers img. An empty ID is generated, an empty State
// becomes managed and a zero CreatedAt becomes now; img is updated in place.
// A taken name, or Default set while another image is the default, is
// ErrExists: to make a new image the default atomically, check
// DefaultImage and create inside one WithTx, or call SetDefaultImage.
func (s *Store) CreateImage(ctx context.Context, img *Image) error {
	if img.State == "" {
		img.State = ImageStateManaged
	}
	if err := validateImage(img); err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	if img.CreatedAt.IsZero() {
		img.CreatedAt = now()
	}
	img.CreatedAt = img.CreatedAt.UTC()
	err := insertWithID(&img.ID, "images.id", func() error {
		_, err := s.q.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			img.ID, img.Name, img.Fingerprint, img.Dir, img.Default, img.State,
			img.Suite, img.KernelVersion, img.SizeBytes, formatTime(img.CreatedAt),
			img.Manifest, optTime(img.VerifiedAt), img.VerifyError, img.ReadySnapshotID)
		return err
	})
	if err != nil {
		return fmt.Errorf("create image: %w", imageWriteErr(err, img))
	}
	return nil
}

// GetImage finds an image by ID or, failing that, by name. An exact ID
// match wins so a name that happens to look like another image's ID
// cannot shadow it.
func (s *Store) GetImage(ctx context.Context, idOrName string) (Image, error) {
	img, err := scanImage(s.q.QueryRowContext(ctx, `SELECT `+imageColumns+`
		FROM images WHERE id = ?1 OR name = ?1
		ORDER BY id = ?1 DESC LIMIT 1`, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, fmt.Errorf("image %q: %w", idOrName, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("get image %q: %w", idOrName, err)
	}
	return img, nil
}

// ListImages returns all images, oldest first.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	return s.queryImages(ctx, `SELECT `+imageColumns+` FROM images ORDER BY created_at, name`)
}

func (s *Store) queryImages(ctx context.Context, query string, args ...any) ([]Image, error) {
	rows, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	var out []Image
	for rows.Next() {
		img, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		out = append(out, img)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

// UpdateImage writes every field of img except ID, CreatedAt and
// ReadySnapshotID: only SetImageReadySnapshot writes that, so an update
// from a copy read before a ready snapshot was recorded cannot drop it.
func (s *Store) UpdateImage(ctx context.Context, img *Image) error {
	if err := validateImage(img); err != nil {
		return fmt.Errorf("update image: %w", err)
	}
	res, err := s.q.ExecContext(ctx, `UPDATE images SET name = ?, fingerprint = ?,
		dir = ?, is_default = ?, state = ?, suite = ?, kernel_version = ?,
		size_bytes = ?, manifest = ?, verified_at = ?, verify_error = ? WHERE id = ?`,
		img.Name, img.Fingerprint, img.Dir, img.Default, img.State, img.Suite,
		img.KernelVersion, img.SizeBytes, img.Manifest, optTime(img.VerifiedAt),
		img.VerifyError, img.ID)
	if err != nil {
		return fmt.Errorf("update image: %w", imageWriteErr(err, img))
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("update image %s: %w", img.ID, err)
	}
	return nil
}

// DeleteImage removes the image row (not its files). It fails with
// ErrInUse, naming them, while any VM or snapshot references the image.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	return s.WithTx(ctx, func(tx *Store) error {
		users, err := tx.VMsUsingImage(ctx, id)
		if err != nil {
			return fmt.Errorf("delete image %s: %w", id, err)
		}
		if len(users) > 0 {
			names := make([]string, len(users))
			for i, vm := range users {
				names[i] = vm.Name
			}
			return fmt.Errorf("delete image %s: used by vm %s: %w", id, strings.Join(names, ", "), ErrInUse)
		}
		// A snapshot's root layer stands on the image's rootfs (its
		// ready snapshot too: the caller deletes that first).
		snaps, err := tx.SnapshotsOfImage(ctx, id)
		if err != nil {
			return fmt.Errorf("delete image %s: %w", id, err)
		}
		if len(snaps) > 0 {
			return fmt.Errorf("delete image %s: used by %s: %w", id, usersList(nil, snaps), ErrInUse)
		}
		res, err := tx.q.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, id)
		if isForeignKey(err) {
			// Unreachable while the check above holds the write lock;
			// kept so the RESTRICT key maps to the same error regardless.
			return fmt.Errorf("delete image %s: %w", id, ErrInUse)
		}
		if err != nil {
			return fmt.Errorf("delete image %s: %w", id, err)
		}
		if err := affectedOne(res, ErrNotFound); err != nil {
			return fmt.Errorf("delete image %s: %w", id, err)
		}
		return nil
	})
}

// SetDefaultImage makes image id the one default, clearing the flag on any
// other image in the same transaction. It does not touch the image's
// state; promoting a staged image is the caller's decision.
func (s *Store) SetDefaultImage(ctx context.Context, id string) error {
	return s.WithTx(ctx, func(tx *Store) error {
		// Clear first: the partial unique index would reject two defaults
		// even for the instant between the two updates.
		if _, err := tx.q.ExecContext(ctx,
			`UPDATE images SET is_default = 0 WHERE is_default = 1 AND id != ?`, id); err != nil {
			return fmt.Errorf("set default image %s: %w", id, err)
		}
		res, err := tx.q.ExecContext(ctx, `UPDATE images SET is_default = 1 WHERE id = ?`, id)
		if err != nil {
			return fmt.Errorf("set default image %s: %w", id, err)
		}
		if err := affectedOne(res, ErrNotFound); err != nil {
			return fmt.Errorf("set default image %s: %w", id, err)
		}
		return nil
	})
}

// DefaultImage returns the default image, or ErrNotFound when there is none
// (no image registered yet, or the default was deleted).
func (s *Store) DefaultImage(ctx context.Context) (Image, error) {
	img, err := scanImage(s.q.QueryRowContext(ctx,
		`SELECT `+imageColumns+` FROM images WHERE is_default = 1`))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, fmt.Errorf("default image: %w", ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("default image: %w", err)
	}
	return img, nil
}

// ImageByFingerprint returns the newest image built from the inputs that
// hash to fingerprint, so a build with unchanged inputs can be skipped.
func (s *Store) ImageByFingerprint(ctx context.Context, fingerprint string) (Image, error) {
	if fingerprint == "" {
		return Image{}, fmt.Errorf("image by fingerprint: empty fingerprint: %w", ErrInvalid)
	}
	img, err := scanImage(s.q.QueryRowContext(ctx, `SELECT `+imageColumns+`
		FROM images WHERE fingerprint = ?
		ORDER BY created_at DESC, rowid DESC LIMIT 1`, fingerprint))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, fmt.Errorf("image with fingerprint %s: %w", fingerprint, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image by fingerprint %s: %w", fingerprint, err)
	}
	return img, nil
}

// optTime formats t, or "" for the zero time ("never").
func optTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return formatTime(t.UTC())
}

// SetImageVerified records the outcome of `image verify` on image id:
// verifyErr is "" when it passed. A failed verify of a staged image keeps
// it staged and blocks its promotion until a verify passes.
func (s *Store) SetImageVerified(ctx context.Context, id string, at time.Time, verifyErr string) error {
	res, err := s.q.ExecContext(ctx, `UPDATE images SET verified_at = ?, verify_error = ? WHERE id = ?`,
		optTime(at), verifyErr, id)
	if err != nil {
		return fmt.Errorf("set image %s verified: %w", id, err)
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("set image %s verified: %w", id, err)
	}
	return nil
}

// PromoteImage makes image id managed and the default, in one
// transaction: the previous default stays managed, just not the default.
func (s *Store) PromoteImage(ctx context.Context, id string) error {
	return s.WithTx(ctx, func(tx *Store) error {
		res, err := tx.q.ExecContext(ctx, `UPDATE images SET state = ? WHERE id = ?`, ImageStateManaged, id)
		if err != nil {
			return fmt.Errorf("promote image %s: %w", id, err)
		}
		if err := affectedOne(res, ErrNotFound); err != nil {
			return fmt.Errorf("promote image %s: %w", id, err)
		}
		return tx.SetDefaultImage(ctx, id)
	})
}
