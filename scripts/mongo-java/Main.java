// Launcher for mongo-java-server (de.bwaldvogel:mongo-java-server), which ships no main class:
// binds the MongoDB wire protocol to HOST:PORT and serves until the process is killed. Compiled
// once into the cached home by scripts/infra.sh, which runs it with the Maven-fetched jars.
//
//   java -cp 'classes:libs/*' Main HOST PORT [H2_FILE]
//
// With H2_FILE the data lives in that H2 MVStore file (kept across restarts); without it, in memory.
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.ServerVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;

public final class Main {
  public static void main(String[] args) throws InterruptedException {
    if (args.length < 2 || args.length > 3) {
      System.err.println("usage: Main HOST PORT [H2_FILE]");
      System.exit(2);
    }
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    H2Backend backend = args.length == 3 ? new H2Backend(args[2]) : H2Backend.inMemory();
    // Report MongoDB 5.0 (wire version 13): current drivers refuse servers older than 4.0.
    backend.version(ServerVersion.MONGO_5_0);
    MongoServer server = new MongoServer(backend);
    server.bind(host, port);
    // SIGTERM/SIGINT: close the clients and the listener, then the backend (flushes the H2 file).
    Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow, "shutdown"));
    System.out.println("mongo-java-server listening on " + host + ":" + port + " (" + backend + ")");
    Thread.currentThread().join();
  }
}
