module github.com/svcwatch/svcwatch/mysql

go 1.21.0

require (
	github.com/go-sql-driver/mysql v1.9.3
	github.com/svcwatch/svcwatch v0.0.0
	go.uber.org/goleak v1.3.0
)

require (
	filippo.io/edwards25519 v1.1.0 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/dgryski/go-rendezvous v0.0.0-20200823014737-9f7001d12a5f // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/modern-go/concurrent v0.0.0-20180228061459-e0a39a4cb421 // indirect
	github.com/modern-go/reflect2 v1.0.2 // indirect
	github.com/redis/go-redis/v9 v9.17.3 // indirect
)

replace github.com/svcwatch/svcwatch => ../
