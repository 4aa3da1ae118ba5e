package evidence_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/evidence"
)

// The ledger projector stores a fetched batch's evidence in the same
// transaction as its receipts, so both commit or neither does. (Compiled,
// not run: it needs a migrated database.)
func ExampleStore_PutTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://companyos:companyos@127.0.0.1:5432/companyos")
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	store, err := evidence.New(evidence.Config{Pool: pool})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	commands := [][]byte{
		[]byte(`{"type":"entity.create","payload":{"id":"user:u123","kind":"user","attrs":{"region":"eu"}}}`),
		[]byte(`{"type":"relation.link","payload":{"from":"user:u123","rel":"member_of","to":"team:t3"}}`),
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// … insert the receipts, whose evidence_hash is evidence.Hash(command) …
		return store.PutTx(ctx, tx, commands)
	})
	if err != nil {
		panic(err)
	}
	b, err := store.Get(ctx, evidence.Hash(commands[0]))
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))
}
