package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestImageCRUD(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)

	img := Image{
		Name: "debian-bookworm", Fingerprint: "abc", Dir: "/var/lib/banger/images/x",
		Default: true, Suite: "bookworm", KernelVersion: "6.1.0-50-cloud-amd64",
		SizeBytes: 2 << 30, Manifest: `{"packages":{}}`,
	}
	if err := s.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	if len(img.ID) != 8 || img.State != ImageStateManaged || img.CreatedAt.IsZero() {
		t.Fatalf("CreateImage did not fill defaults: %+v", img)
	}
	for _, key := range []string{img.ID, img.Name} {
		got, err := s.GetImage(ctx, key)
		if err != nil {
			t.Fatalf("GetImage(%q): %v", key, err)
		}
		if !reflect.DeepEqual(got, img) {
			t.Errorf("GetImage(%q) = %+v, want %+v", key, got, img)
		}
	}

	img.State = ImageStateStaged
	img.SizeBytes = 3 << 30
	img.Name = "renamed"
	if err := s.UpdateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, img) {
		t.Errorf("after update got %+v, want %+v", got, img)
	}

	second := mustImage(t, s, "second")
	list, err := s.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != img.ID || list[1].ID != second.ID {
		t.Errorf("ListImages = %+v", list)
	}

	if err := s.DeleteImage(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetImage(ctx, img.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetImage after delete = %v, want ErrNotFound", err)
	}
}

func TestImageErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		op   func(s *Store, existing Image) error
		want error
	}{
		{"duplicate name", func(s *Store, _ Image) error {
			return s.CreateImage(ctx, &Image{Name: "debian", Dir: "/other"})
		}, ErrExists},
		{"duplicate id", func(s *Store, e Image) error {
			return s.CreateImage(ctx, &Image{ID: e.ID, Name: "other", Dir: "/other"})
		}, ErrExists},
		{"rename onto taken name", func(s *Store, _ Image) error {
			other := mustImage(t, s, "other")
			other.Name = "debian"
			return s.UpdateImage(ctx, &other)
		}, ErrExists},
		{"second default on create", func(s *Store, _ Image) error {
			return s.CreateImage(ctx, &Image{Name: "other", Dir: "/other", Default: true})
		}, ErrExists},
		{"second default on update", func(s *Store, _ Image) error {
			other := mustImage(t, s, "other")
			other.Default = true
			return s.UpdateImage(ctx, &other)
		}, ErrExists},
		{"missing name", func(s *Store, _ Image) error {
			return s.CreateImage(ctx, &Image{Dir: "/x"})
		}, ErrInvalid},
		{"unknown state", func(s *Store, _ Image) error {
			return s.CreateImage(ctx, &Image{Name: "x", Dir: "/x", State: "building"})
		}, ErrInvalid},
		{"get unknown", func(s *Store, _ Image) error {
			_, err := s.GetImage(ctx, "nope")
			return err
		}, ErrNotFound},
		{"update unknown", func(s *Store, _ Image) error {
			return s.UpdateImage(ctx, &Image{ID: "nope", Name: "x", Dir: "/x", State: ImageStateManaged})
		}, ErrNotFound},
		{"delete unknown", func(s *Store, _ Image) error {
			return s.DeleteImage(ctx, "nope")
		}, ErrNotFound},
		{"delete in use", func(s *Store, e Image) error {
			mustVM(t, s, "dev", e.ID)
			return s.DeleteImage(ctx, e.ID)
		}, ErrInUse},
		{"set default unknown", func(s *Store, _ Image) error {
			return s.SetDefaultImage(ctx, "nope")
		}, ErrNotFound},
		{"fingerprint unknown", func(s *Store, _ Image) error {
			_, err := s.ImageByFingerprint(ctx, "nope")
			return err
		}, ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			existing := Image{Name: "debian", Dir: "/debian", Default: true}
			if err := s.CreateImage(ctx, &existing); err != nil {
				t.Fatal(err)
			}
			if err := tc.op(s, existing); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			// Nothing about the failure may have touched the existing image.
			got, err := s.GetImage(ctx, existing.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, existing) {
				t.Errorf("existing image changed: %+v", got)
			}
		})
	}
}

func TestDeleteImageInUseNamesVMs(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	vm := mustVM(t, s, "dev", img.ID)
	err := s.DeleteImage(ctx, img.ID)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("DeleteImage = %v, want ErrInUse", err)
	}
	want := "delete image " + img.ID + ": used by vm dev: in use"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// Once the VM is gone the image can go.
	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImage(ctx, img.ID); err != nil {
		t.Fatalf("DeleteImage after VM delete: %v", err)
	}
}

// TestImageDeleteRestrictedByDatabase checks the foreign key itself, not
// just DeleteImage's check, so raw SQL cannot orphan a VM either.
func TestImageDeleteRestrictedByDatabase(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	mustVM(t, s, "dev", img.ID)
	_, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, img.ID)
	if !isForeignKey(err) {
		t.Fatalf("raw delete = %v, want a foreign key error", err)
	}
}

func TestDefaultImage(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)

	if _, err := s.DefaultImage(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DefaultImage on empty store = %v, want ErrNotFound", err)
	}
	a := mustImage(t, s, "a")
	b := mustImage(t, s, "b")

	for _, want := range []Image{a, b, b, a} {
		if err := s.SetDefaultImage(ctx, want.ID); err != nil {
			t.Fatal(err)
		}
		got, err := s.DefaultImage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || !got.Default {
			t.Errorf("DefaultImage = %s (default %v), want %s", got.Name, got.Default, want.Name)
		}
		var n int
		if err := s.db.QueryRow(`SELECT COUNT(*) FROM images WHERE is_default = 1`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("%d default images", n)
		}
	}

	if err := s.DeleteImage(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DefaultImage(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("DefaultImage after deleting it = %v, want ErrNotFound", err)
	}
}

// TestFirstImageBecomesDefault is the image build pattern: check for a
// default and create inside one transaction.
func TestFirstImageBecomesDefault(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	register := func(name string) Image {
		img := Image{Name: name, Dir: "/" + name}
		err := s.WithTx(ctx, func(tx *Store) error {
			_, err := tx.DefaultImage(ctx)
			switch {
			case errors.Is(err, ErrNotFound):
				img.Default = true
			case err != nil:
				return err
			default:
				img.State = ImageStateStaged
			}
			return tx.CreateImage(ctx, &img)
		})
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	first, second := register("first"), register("second")
	if !first.Default || first.State != ImageStateManaged {
		t.Errorf("first = %+v", first)
	}
	if second.Default || second.State != ImageStateStaged {
		t.Errorf("second = %+v", second)
	}
}

func TestImageByFingerprint(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, name := range []string{"old", "new", "other"} {
		fp := "same"
		if name == "other" {
			fp = "different"
		}
		img := Image{Name: name, Dir: "/" + name, Fingerprint: fp, CreatedAt: t0.Add(time.Duration(i) * time.Hour)}
		if err := s.CreateImage(ctx, &img); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ImageByFingerprint(ctx, "same")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "new" {
		t.Errorf("ImageByFingerprint = %s, want the newest (new)", got.Name)
	}
	if _, err := s.ImageByFingerprint(ctx, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty fingerprint = %v, want ErrInvalid", err)
	}
}

// TestGetByIDBeatsName: a name equal to another row's ID must not shadow
// that row when looked up by ID.
func TestGetByIDBeatsName(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	a := mustImage(t, s, "a")
	trap := Image{Name: a.ID, Dir: "/trap"}
	if err := s.CreateImage(ctx, &trap); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID {
		t.Errorf("GetImage(%q) returned %s (%s)", a.ID, got.ID, got.Name)
	}
}

// TestReadyImagesBecomeManaged plays an upgrade from a database whose
// images were "ready" (schema 3) to the staged/managed states.
func TestReadyImagesBecomeManaged(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	saved := migrations
	migrations = saved[:3]
	s, err := Open(ctx, path)
	if err != nil {
		migrations = saved
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`INSERT INTO images (id, name, dir, is_default, state, created_at)
		VALUES ('i1', 'old', '/old', 1, 'ready', ?), ('i2', 'wip', '/wip', 0, 'staged', ?)`,
		formatTime(now()), formatTime(now())); err != nil {
		migrations = saved
		t.Fatal(err)
	}
	s.Close()
	migrations = saved
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old, _ := s.GetImage(ctx, "old")
	wip, _ := s.GetImage(ctx, "wip")
	if old.State != ImageStateManaged || !old.Default || wip.State != ImageStateStaged || !old.VerifiedAt.IsZero() {
		t.Fatalf("after upgrade: old=%+v wip=%+v", old, wip)
	}
}

func TestPromoteAndVerify(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	first := mustImage(t, s, "first")
	if err := s.SetDefaultImage(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	second := Image{Name: "second", Dir: "/second", State: ImageStateStaged}
	if err := s.CreateImage(ctx, &second); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.SetImageVerified(ctx, second.ID, at, "sshd inactive"); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetImage(ctx, "second")
	if !got.VerifiedAt.Equal(at) || got.VerifyError != "sshd inactive" || got.State != ImageStateStaged {
		t.Fatalf("after failed verify: %+v", got)
	}
	if err := s.PromoteImage(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetImage(ctx, "second")
	prev, _ := s.GetImage(ctx, "first")
	if got.State != ImageStateManaged || !got.Default || prev.Default || prev.State != ImageStateManaged {
		t.Fatalf("after promote: second=%+v first=%+v", got, prev)
	}
	if err := s.PromoteImage(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("promote unknown: %v", err)
	}
	if err := s.SetImageVerified(ctx, "nope", at, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("verify unknown: %v", err)
	}
}
